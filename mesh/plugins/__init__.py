"""Plugin discovery and the hooks engines implement."""

from mesh.plugins.host import PluginHost, PluginRecord, PluginStatus

__all__ = ["PluginHost", "PluginRecord", "PluginStatus"]
