"""Wrong-token sign-ins against the web app's /login, as a password guesser would send them: 600 POSTs of
``name=x&token=wrong-N`` from 8 threads; prints the answers' status codes and how many the agent checked a second
(docs/app.md, "Signing in, roles", has the figures). ``--repeat K`` sends each guess K times in a row (a guesser
that knows a token's second try is checked while its address is throttled).

    PYTHONPATH=. python scripts/experiments/dos/sign_in_flood.py http://127.0.0.1:PORT [--n 600] [--threads 8]
        [--repeat 1]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import time
import urllib.error
import urllib.parse
import urllib.request


def one(url: str, i: int, repeat: int = 1) -> int:
    data = urllib.parse.urlencode({"name": "x", "token": f"wrong-{i // repeat:030d}"}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the web app, e.g. http://127.0.0.1:8081")
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1, help="send each guess this many times in a row")
    a = ap.parse_args()
    url = a.base.rstrip("/") + "/login"
    t = time.monotonic()
    with cf.ThreadPoolExecutor(a.threads) as ex:
        codes = collections.Counter(ex.map(lambda i: one(url, i, a.repeat), range(a.n)))
    dt = time.monotonic() - t
    print(dict(codes), f"{a.n / dt:.0f} attempts/s", f"{codes[401] / dt:.1f} checked/s")


if __name__ == "__main__":
    main()
