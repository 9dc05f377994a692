"""BGP for the controller: a small BGP-4 speaker (speaker.py: Speaker, PeerConfig, Learned) that
announces routes with third-party next hops to the fabric's routers, with graceful restart, and
learns theirs. May import only the standard library and os-ken's BGP message codec
(os_ken.lib.packet.bgp); never the server or clients.
"""
