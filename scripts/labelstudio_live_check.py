"""Check the Label Studio backend against a live Label Studio (docs/app.md, "Label Studio").

Needs a running agent with its web app (`shortlist serve ... --web-port P`) and a running Label Studio
(started with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false when both run on one machine; an
API token that Label Studio accepts as `Authorization: Token ...`: LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true
for a fresh 1.23 instance). It creates
a project with the agent's classes and one task per sample (plus one that matches none), connects the model
named "shortlist" with Basic auth, gives the webhook it creates the write token, retrieves predictions,
compares the Data Manager's order by prediction score with Select, annotates the first task and reads the
label back from the agent. Prints one line per check; exit 1 if one fails.

    PYTHONPATH=. .venv/bin/python scripts/labelstudio_live_check.py --ls http://127.0.0.1:8080 \
        --ls-token LS_TOKEN --app http://127.0.0.1:8090 --agent 127.0.0.1:50051 \
        --read-token R --write-token W --budget 5
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import urllib.parse
import urllib.request
from typing import Any

from agent import client
from shortlist.v1 import agent_pb2


def call(method: str, url: str, token: str, body: Any = None, **params: Any) -> Any:
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ls", required=True)
    ap.add_argument("--ls-token", required=True)
    ap.add_argument("--app", required=True, help="the web app's URL as Label Studio reaches it")
    ap.add_argument("--agent", required=True)
    ap.add_argument("--read-token", default="")
    ap.add_argument("--write-token", default="")
    ap.add_argument("--strategy", default="typiclust")
    ap.add_argument("--budget", type=int, default=100, help="the app's --labelstudio-budget")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    stub = client.connect(a.agent, config=client.ClientConfig(token=a.read_token))
    status = stub.GetStatus(agent_pb2.GetStatusRequest())
    samples = [s for s in stub.ListSamples(agent_pb2.ListSamplesRequest())][:500]
    choices = "".join(f'<Choice value="{c}"/>' for c in status.classes)
    config = (f'<View><Image name="image" value="$image"/><Choices name="label" toName="image">{choices}'
              "</Choices></View>")
    ls, tok = a.ls.rstrip("/"), a.ls_token
    project = call("POST", f"{ls}/api/projects", tok, {"title": "Shortlist live check", "label_config": config})["id"]
    tasks = [{"image": f"/data/local-files/?d={s.id}"} for s in samples]
    tasks.append({"image": "/data/upload/1/0a1b2c3d-none.jpg"})  # matches no sample
    call("POST", f"{ls}/api/projects/{project}/import", tok, tasks)
    ml = call("POST", f"{ls}/api/ml", tok, {"url": a.app.rstrip("/") + "/labelstudio", "project": project,
                                             "title": "shortlist", "auth_method": "BASIC_AUTH",
                                             "basic_auth_user": "labelstudio", "basic_auth_pass": a.write_token})
    checks = [("model connected", ml["readable_state"] == "Connected", ml["readable_state"])]
    for hook in call("GET", f"{ls}/api/webhooks", tok, project=project):
        if a.write_token:  # the webhook Label Studio made for the model carries no token
            headers = {"Authorization": f"Bearer {a.write_token}"}
            call("PATCH", f"{ls}/api/webhooks/{hook['id']}", tok, {"headers": headers})
    everything = {"selectedItems": {"all": True, "excluded": []}}
    done = call("POST", f"{ls}/api/dm/actions", tok, everything, id="retrieve_tasks_predictions", project=project)
    checks.append(("predictions retrieved", done["processed_items"] == len(tasks), done["detail"]))
    view = call("POST", f"{ls}/api/dm/views", tok, {"project": project, "data": {
        "title": "by score", "ordering": ["tasks:predictions_score"], "filters": {"conjunction": "and", "items": []}}})
    listed = call("GET", f"{ls}/api/tasks", tok, project=project, view=view["id"], page_size=len(tasks))["tasks"]
    order = [t["data"]["image"].split("?d=", 1)[-1] for t in listed]
    req = agent_pb2.SelectRequest(budget=a.budget, strategy=a.strategy, seed=a.seed)
    selected = [s.id for s in stub.Select(req).selected]
    checks.append(("Data Manager order by prediction score = Select", order[:len(selected)] == selected,
                   f"first {order[:3]}, Select {selected[:3]}"))
    first = listed[0]
    label = status.classes[0]
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
    call("POST", f"{ls}/api/tasks/{first['id']}/annotations", tok, {"result": result, "lead_time": 1.0})
    got = [(r.label, r.source) for r in stub.ListLabels(agent_pb2.ListLabelsRequest(history=True)) if r.id == order[0]]
    checks.append(("annotation arrived as a label", (label, "labelstudio") in got, str(got)))
    auth = base64.b64encode(f"labelstudio:{a.read_token}".encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(a.app.rstrip("/") + "/labelstudio/health",
                                                       headers={"Authorization": f"Basic {auth}"})) as r:
        checks.append(("health", json.loads(r.read())["status"] == "UP", ""))
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
