"""Who is asking: passwords and session tokens of local accounts (`passwords`), Clerk
session JWTs and profiles (`clerk`), and the one seam that REST and the WebSocket
handshake call to turn a bearer token into a user (`authenticator`).
"""
