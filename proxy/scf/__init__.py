"""Function backends: the CLB event codec, local worker instances, remote invocation."""
