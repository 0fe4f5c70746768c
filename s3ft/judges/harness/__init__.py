"""The two sides of the code judge, run inside the sandboxes: wire (values), server (program), checker (tests)."""
