"""A plugin whose import fails: the host must report a load error and carry on."""

raise ImportError("broken_import needs the package 'revo-missing-dependency'; install it")
