"""The model family: its configuration and its one modeling file (encoder, decoder, encoder-decoder and their heads).
Both go into saved folders alone, as remote code: modeling imports its configuration and nothing else of ours."""
