"""Generated from proto/ by generate_proto.sh; do not edit."""
