"""Settings for every test the suite collects (tests/ and examples/banking/tests/)."""

import signal

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
# exec, so a child would never see the Ctrl-C some tests send it. A handled signal is reset to its
# default by exec: handling it here lets every child the tests start be interrupted.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
