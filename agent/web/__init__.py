"""The labelling web app (FastAPI, server-rendered Jinja2 pages, a little vendored JavaScript).

It talks to the agent ONLY through gRPC (agent.client): a label given in the browser is a SubmitLabels
like any other. See agent/web/app.py for the structure and docs/app.md for users.
"""
