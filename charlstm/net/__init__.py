"""The networks: the character model (LSTM, GRU or peephole LSTM cells) and the peephole cell."""
