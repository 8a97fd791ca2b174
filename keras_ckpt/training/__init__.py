"""The training side: what runs inside `fit`, below the callbacks' decisions.

`writer` runs saves inline or on one background thread.
"""
