"""Console views: thin, one function per page; reads go through the same selectors and
serializers as the REST API (`api/views/`)."""
