# Sourced by scripts/setup.sh and scripts/labelstudio_setup.sh (from the repository root): the free-space
# check each runs before pip installs an environment, so that it says so before pip fails halfway with a
# bare "No space left on device".

# need_free_space NEED_MB MESSAGE [MORE...]
# Returns 0 when the file system of the current folder has at least NEED_MB MiB free (or df tells nothing).
# Otherwise writes MESSAGE to stderr, with {free} replaced by the MiB free and {mount} by that file
# system's mount point, then each MORE line as it is, and returns 1.
need_free_space() {
  local need_kb=$(($1 * 1024)) message=$2 free_kb line
  shift 2
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -z "$free_kb" ] || [ "$free_kb" -ge "$need_kb" ]; then
    return 0
  fi
  message=${message//\{free\}/$((free_kb / 1024))}
  if [[ $message == *"{mount}"* ]]; then
    message=${message//\{mount\}/$(df -P . | awk 'NR==2 {print $6}')}
  fi
  echo "$message" >&2
  for line in "$@"; do
    echo "$line" >&2
  done
  return 1
}
