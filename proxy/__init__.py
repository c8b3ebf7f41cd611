"""clbscf-proxy: an L7 edge gateway that does what Tencent CLB does with SCF and CVM targets."""

__version__ = "0.1.0"
