"""Per-sandbox networking: slots, namespaces, veth, TAP, NAT (DESIGN.md §7)."""
