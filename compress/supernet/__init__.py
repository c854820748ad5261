from compress.supernet.hybrid import HybridSupernet, extract_subnet, subnet_config

__all__ = ["HybridSupernet", "extract_subnet", "subnet_config"]
