"""The baseline of bench/api_throughput.py: Flask with one trivial endpoint and nothing else,
served by gunicorn with the API's own settings (api/gunicorn_conf.py)."""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/ping", methods=["GET", "POST"])
def ping():
    # Read the body as the API does, so a POST costs the same parsing here.
    body = request.get_json(silent=True) if request.method == "POST" else None
    return jsonify(ok=True, echo=body), 202 if request.method == "POST" else 200
