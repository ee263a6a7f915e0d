"""CRI v1 protobuf definitions and the Python stubs generated from them."""
