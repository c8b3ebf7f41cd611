# A Flask web function in the shape of Tencent's template: the app listens on 0.0.0.0:9000.
import hashlib
import os
import threading
import time

from flask import Flask, Response, jsonify, redirect, request

app = Flask(__name__)
# /together: requests that must all be inside the app at once to be answered
together = threading.Barrier(int(os.environ.get("TOGETHER", "2")), timeout=20)


@app.route("/")
def hello():
    return "hello from flask"


@app.route("/whoami")
def whoami():
    return jsonify(pid=os.getpid(), cwd=os.getcwd(),
                   env={k: v for k, v in os.environ.items()
                        if k.startswith(("SCF_", "TENCENTCLOUD_", "PORT", "GREETING"))})


@app.route("/headers")
def headers():
    return jsonify(dict(request.headers))


@app.route("/slow")
def slow():
    time.sleep(float(request.args.get("s", "0.5")))
    return jsonify(pid=os.getpid())


@app.route("/together")
def at_once():
    together.wait()
    return jsonify(pid=os.getpid())


@app.route("/stream")
def stream():
    # The first piece, then the rest only once the test has seen it (the file appears):
    # a proxy that buffered the response would never show the first piece.
    gate = request.args["gate"]

    def pieces():
        yield "first piece\n"
        deadline = time.monotonic() + 20
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.02)
        yield "second piece\n"
    return Response(pieces(), mimetype="text/plain")


@app.route("/upload", methods=["POST"])
def upload():
    digest, size = hashlib.sha256(), 0
    while True:
        piece = request.stream.read(65536)
        if not piece:
            break
        digest.update(piece)
        size += len(piece)
    return jsonify(size=size, sha256=digest.hexdigest())


@app.route("/die")
def die():
    os._exit(7)  # the whole server goes, mid-request


@app.route("/moved")
def moved():
    return redirect("/")


if __name__ == "__main__":
    app.run(host="0.0.0.0", port=9000)
