"""What both servers share: serving on loopback and the command line that starts it,
the Host check against DNS rebinding, one parser of JSON bodies, the one HTTP error and
its JSON body, the identity proof of GET /identity, and the one check that a URL is a
loopback address; and what every HTTP client shares: how long to wait before a retry."""
