"""`hub:` section: where the proxy and the hub listen, and where the hub keeps its state; the
proxy's answer to malformed URLs; who may have named servers."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from tornado import web

from ..settings import Settings

# configurable-http-proxy decodes each request's path to pick its route (`targetForReq`), and a
# malformed escape there (`%FF`, a lone `%`, `%C3%28`) makes that throw URIError, which it answers
# with a 500, on every path (5.3.0, the newest release, still does). PROXY_PATCH makes its web and
# websocket handlers answer such a request 400, naming the problem, before that; `bin` is the proxy's
# own script, beside whose lib/ its class is. Two ways to load it, the proxy's own code unmodified:
# - PROXY_PREFIX (embedded and Docker): JupyterHub starts the proxy with it before its command, and node
#   runs the command (the first argument; a bare name is looked up on PATH, as the shell would) once
#   the patch is in;
# - PROXY_NODE_OPTIONS (Kubernetes, where z2jh's chart starts the proxy image itself): NODE_OPTIONS for
#   that pod, a module node loads before the proxy's own script (`--import`, node >= 18.19).
PROXY_PATCH = r"""
const patchProxy = async (bin) => {
  const lib = path.join(path.dirname(bin), "..", "lib", "configproxy.js");
  const found = await import(pathToFileURL(lib).href);
  const Proxy = [found.default, found.default?.ConfigurableProxy, found.ConfigurableProxy]
    .find((c) => c?.prototype?.handleProxyWeb);
  if (!Proxy) { console.error(`opshub: no proxy class in ${lib}`); process.exit(1); }
  const refusal = "400 Bad Request: the URL's path has a malformed percent-escape (such as %FF or a lone %)";
  const malformed = (req) => {
    try { decodeURIComponent(new URL(req.url, "http://opshub.invalid").pathname); return false; }
    catch { return true; }
  };
  const web = Proxy.prototype.handleProxyWeb;
  Proxy.prototype.handleProxyWeb = function (req, res) {
    if (!malformed(req)) return web.call(this, req, res);
    this.log.warn("400 %s: a malformed escape in the URL's path", req.method);
    res.writeHead(400, { "Content-Type": "text/plain; charset=utf-8" });
    res.end(refusal + "\n");
  };
  const ws = Proxy.prototype.handleProxyWs;
  Proxy.prototype.handleProxyWs = function (req, socket, head) {
    if (!malformed(req)) return ws.call(this, req, socket, head);
    socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n` +
      `Content-Length: ${Buffer.byteLength(refusal) + 1}\r\n\r\n${refusal}\n`);
  };
};
"""
_IMPORTS = """
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
"""
PROXY_GUARD = (
    _IMPORTS
    + PROXY_PATCH
    + r"""
const name = process.argv[1];
const found = name.includes("/") ? name
  : (process.env.PATH || "").split(":").map((dir) => path.join(dir, name)).find((p) => fs.existsSync(p));
if (!found) { console.error(`opshub: ${name} is not on PATH`); process.exit(127); }
const bin = fs.realpathSync(found);
await patchProxy(bin);
process.argv[1] = bin;
await import(pathToFileURL(bin).href);
"""
)
PROXY_PREFIX = ["node", "--input-type=module", "--eval", PROXY_GUARD]
PROXY_PRELOAD = (
    _IMPORTS
    + PROXY_PATCH
    + r"""
const main = process.argv[1] || "";
if (path.basename(main) === "configurable-http-proxy") await patchProxy(fs.realpathSync(main));
"""
)
PROXY_NODE_OPTIONS = "--import=data:text/javascript," + urllib.parse.quote(PROXY_PRELOAD, safe="")


def apply_hub(c, settings: Settings, runtime) -> None:
    hub = settings["hub"]
    state = Path(hub["state_dir"])
    c.JupyterHub.bind_url = f"http://{hub['ip']}:{hub['port']}{hub['base_url']}"
    # The hub's own API and the proxy's REST API stay on loopback, next to the public port, so
    # that several hubs (tests, a second `make run`) can share a machine without clashing.
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{hub['port'] + 1}"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub['port'] + 2}"
    c.ConfigurableHTTPProxy.command = [*PROXY_PREFIX, *runtime.proxy_command]
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    # Everything the hub must keep across restarts lives in the state folder.
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    # Ctrl-C stops users' servers with the hub: the embedded default leaves no stray processes.
    # (SIGTERM, a restart, leaves them for the next start: opshub.hubapp.OpsHubApp.)
    c.JupyterHub.cleanup_servers = True


@dataclass(frozen=True)
class NamedServersOnlyFor:
    """`JupyterHub.named_server_limit_per_user`: `account` (the runner: one named server per run, as many
    as `runner.max_concurrent` lets the service start) has no limit, and a named server of anyone else
    is refused, 403 naming why, before JupyterHub records or starts anything.

    JupyterHub calls it with the request's handler before it creates or starts a named server (its API,
    its spawn page, a rename), whose path names the user, and to draw its home and admin pages, whose
    paths name nobody (0 there: no limit shown). No number would do: 0 means no limit, and N refuses
    only the (N+1)th named server. `SystemServers` refuses again at spawn time, should one get there.
    """

    account: str

    def __call__(self, handler) -> int:
        user = handler.path_args[0] if handler.path_args else None
        if user and user != self.account:
            raise web.HTTPError(
                403,
                f"{user} cannot have named servers: opshub gives each person one server;"
                " named servers are the runner's, one per unattended run",
            )
        return 0
