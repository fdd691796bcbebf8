"""Safe, polite HTTP fetching for the download stage: what img2dataset's own fetcher lacks.

- `netguard`: SSRF guard. A URL's host is parsed strictly (non-canonical IPv4 forms such as 2130706433 or
  0x7f.1 are refused outright), resolved with getaddrinfo, and every address is checked with `ipaddress`
  (loopback, private, link-local, multicast, reserved, IPv4-mapped/embedded forms): unless the URL's
  host:port is on an explicit allow-list, any non-global address refuses the URL.
- `robots`: RFC 9309 robots.txt rules per (scheme, host, port), fetched through the same guarded client,
  cached per worker process, for our user-agent token.
- `limits`: the pixel cap read from an image header (a bounded prefix) before anything decodes the image.
- `client`: the fetcher. Every hop (the URL and each redirect) is parsed, resolved, checked, and allowed
  by robots.txt before one byte of it is requested; the connection goes to the checked IP (no second DNS
  look-up a rebinding attacker could answer differently), with the Host header and TLS SNI of the URL;
  connect, read and total time caps; a byte cap; X-Robots-Tag opt-outs honoured before the body is read.
- `i2d`: plugs the fetcher into img2dataset's Downloader, so shards, stats and incremental resume stay
  img2dataset's own.
- `retry`: the per-sample retry pass over finished shards (transient failures only, never successes) and
  the per-shard `reason`/`attempts` columns; `tarmerge` adds the recovered samples to a shard's tar.
- `stats`: statistics by failure reason and by host.
- `errors`: the failure reasons and which of them are transient.
"""
