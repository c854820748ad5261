"""The built-in block families, one file each; importing this package registers them.

Nothing imports a family module by name: the registry (:mod:`compress.registry`) imports this package on
its first look-up. To add a family, write one file like these and import it below (or, from another
package, declare it under the ``compress.block_families`` entry-point group).
"""

from compress.families import attn, conv, gated_attn, linear_attn  # noqa: F401  (registration happens at import)
