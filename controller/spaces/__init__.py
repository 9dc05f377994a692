"""Number spaces and names every layer shares: the register map (registers.py), every id space
(ids.py: ofports, VNIs, zones, meter and group bases, checked for overlap at import), names (names.py).
The bottom room: it may import only dataplane/ and topology/.
"""
