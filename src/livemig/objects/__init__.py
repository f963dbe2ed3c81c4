"""User-creatable objects (QEMU's ``-object`` and ``object-add``): TLS
credentials and authorization lists, looked up by id by the layers that
use them (migration's ``tls-creds`` and ``tls-authz``)."""

from .authz import AuthzList, AuthzSimple
from .registry import ObjectRegistry, UserObject
from .tls import TlsCreds, TlsCredsPsk, TlsCredsX509

__all__ = ["AuthzList", "AuthzSimple", "ObjectRegistry", "TlsCreds", "TlsCredsPsk",
           "TlsCredsX509", "UserObject"]
