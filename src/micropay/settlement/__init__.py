"""Settlement: the rails money enters and leaves through, payouts, exchange."""
