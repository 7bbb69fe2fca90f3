-- Static s2s routes for loopback interop testing (no DNS/SRV, no /etc/hosts edits).
-- Copied from shared/peers/prosody-plugins, with one addition for the project's tests:
-- s2s_static_routes_only.
-- Config (global):  s2s_static_routes = { ["gw.localhost"] = { "127.0.0.1", 35269 } }
--                   s2s_static_routes_only = true   -- any other domain is unreachable at once
--                                                   -- (no DNS query; stanzas bounce with
--                                                   -- remote-server-not-found)
-- Works by wrapping net.resolvers.service.new, which mod_s2s calls per outgoing connection.
local basic = require "net.resolvers.basic";
local service = require "net.resolvers.service";
local routes = module:get_option("s2s_static_routes", {});
local routes_only = module:get_option_boolean("s2s_static_routes_only", false);

if not service._static_orig_new then
  service._static_orig_new = service.new;
end
local orig_new = service._static_orig_new;

local function unreachable()
  return setmetatable({}, { __index = { next = function(_, cb) cb(nil) end } });
end

service.new = function(hostname, srv, proto, extra)
  local r = routes[hostname];
  if r and (srv == "xmpp-server" or srv == "xmpps-server") then
    if srv == "xmpps-server" then -- no direct-TLS s2s on static routes: empty resolver
      return unreachable();
    end
    module:log("debug", "static s2s route %s -> %s:%d", hostname, r[1], r[2]);
    return basic.new(r[1], r[2], proto, extra);
  end
  if routes_only and (srv == "xmpp-server" or srv == "xmpps-server") then
    module:log("debug", "no static s2s route to %s (%s): unreachable", hostname, srv);
    return unreachable();
  end
  return orig_new(hostname, srv, proto, extra);
end

function module.unload()
  service.new = orig_new;
end
