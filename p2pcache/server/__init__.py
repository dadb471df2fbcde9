"""The node's HTTP listeners: the Guix substitute endpoint and, later, the aiohttp applications.

`http_server` is a small, bounded HTTP/1.1 server built for what `guix substitute` sends
(pipelined GETs read back in order by Content-Length); `http_response` holds the response types
its handler returns and how they are rendered. Why it is not aiohttp: DESIGN.md, "Why the Guix
endpoint is not aiohttp".
"""
