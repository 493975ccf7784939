"""Certificate authorities: embedded (keys in meshd's data) or Vault/OpenBao PKI."""
