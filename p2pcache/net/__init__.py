"""The peer network: node identity, the DHT of provider records, and (later) peer transfers.

`dht.DHTNode` is the entry point for the DHT; `identity.load_or_create_identity` gives the
node its key; `provider_record` is the pure record format of protocol/dht.md.
"""
