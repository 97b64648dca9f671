"""Generated gRPC/protobuf code for meshbreaker.v1 (do not edit; `make proto` regenerates)."""
