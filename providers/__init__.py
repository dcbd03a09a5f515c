"""Email providers behind one interface (``providers.base.EmailProvider``)."""
