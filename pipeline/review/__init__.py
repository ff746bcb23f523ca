"""Human review: pairs to Label Studio and the answers back as votes."""
