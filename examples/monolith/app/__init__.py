"""WEPP-style monolith: a Flask web app and RQ workers sharing one codebase."""
