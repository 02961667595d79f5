"""Serving: a two-stage HTTP API (ANN retrieval -> model scores -> filters) over a model folder.

Public API:
  create_app(model_folder, *, store=None, index_config=None, feature_log=None, admin_key=None)
  serve (typer command function), serve_in_thread(app, port=0) -> RunningServer
  Engine.load(folder, store=None, index_config=None)   the HTTP-free serving logic
  IndexConfig, build_index, ExactIndex, HNSWIndex      maximum inner product search
  FeatureLog, FeatureLogSource                          request log and its import as a Source
"""

__all__ = ["ExactIndex", "HNSWIndex", "IndexConfig", "build_index"]


def __getattr__(name: str) -> object:
    # Everything loads on first use: `segue serve --help` needs none of numpy, FastAPI or uvicorn.
    if name in __all__:
        from segue.serving import index

        return getattr(index, name)
    if name == "create_app":
        from segue.serving.app import create_app

        return create_app
    if name in ("serve", "serve_in_thread"):
        from segue.serving import cli

        return getattr(cli, name)
    if name == "Engine":
        from segue.serving.engine import Engine

        return Engine
    if name in ("FeatureLog", "FeatureLogSource"):
        from segue.serving import feature_log

        return getattr(feature_log, name)
    raise AttributeError(name)
