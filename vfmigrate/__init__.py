"""vfmigrate: live migration of KVM guests that hold SR-IOV VFs.

This module stays import-light: the libvirt hook imports it on every guest
start, stop and migration, most of which involve no VF at all.
"""

__version__ = "0.3.1"

# The XML namespace of vfmigrate's element in a domain's <metadata>.
METADATA_NAMESPACE = "https://vfmigrate.dev/xmlns/domain/1"
METADATA_PREFIX = "vfmigrate"
