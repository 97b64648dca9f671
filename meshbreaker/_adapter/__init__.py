"""The adapter core shared by meshbreaker.grpc (sync) and meshbreaker.aio: one copy of the logic.

guard: the Guard (method facts, outcome by status code, recording); tracking: the Tracker that
reports a call's end once; rejection: the status, details and metadata of a refused call;
fallback: the pure result of a fallback, whichever flavour shows it.
"""
