"""Container health check: exit 0 if Triton answers /v2/health/ready with 200 on the local HTTP port.

Python, not curl: both images have Python and neither needs curl. No proxy: an http_proxy in the
container's environment must not intercept a loopback request. Port: $COMPOSITOR_HTTP_PORT (8000).
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('COMPOSITOR_HTTP_PORT', '8000')}/v2/health/ready"
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(url, timeout=3) as response:
        sys.exit(0 if response.status == 200 else 1)
except OSError as error:  # URLError and HTTPError (e.g. 400 while models load) are OSErrors
    print(f"{url}: {error}", file=sys.stderr)
    sys.exit(1)
