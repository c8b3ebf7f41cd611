"""Non-function backends: CVM upstream pools and the outgoing HTTP/1.1 client."""
