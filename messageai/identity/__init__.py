"""Who is asking: the one seam that REST and the WebSocket handshake call to turn a
bearer token into a user (`authenticator`: local session tokens through the directory,
or Clerk session JWTs and profiles, `clerk`). Password hashing and token rules are
below it, in `messageai.passwords`; the directory service uses them.
"""
