"""The platform core at the bottom of the layers: the config system and small shared pieces.

It imports no other package of this repository, so every other package may use it.
"""
