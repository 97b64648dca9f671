"""Imported first by meshbreaker.cli, before grpc: grpc core reads GRPC_VERBOSITY on import.

Its own log lines ("E1130 ... add_port.cc", "I1130 ... Handshake failed") would reach the terminal
before the command's one-line error, which already says what went wrong and how to fix it. A
GRPC_VERBOSITY the user set (ERROR, DEBUG) wins and shows them.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
