"""Generated from examples/banking/protos; regenerate with make proto."""
