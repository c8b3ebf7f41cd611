"""Code shipped with the proxy: the embedded default's Hello CLB function (``hello/index.py``)."""

from pathlib import Path

HELLO_CODE_DIR = Path(__file__).parent / "hello"
