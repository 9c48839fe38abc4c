"""All SQL of MessageAI: plain synchronous functions that take the connection first.

Callers (the directory service and conversation actors) decide where these run:
inline on the event loop for short reads, in a worker thread for commits.
"""
