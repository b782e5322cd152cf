"""One module per group of RPCs; each translates protobufs to plain values and back."""
