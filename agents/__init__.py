"""Things that choose actions: random, the scripted explorer, the human at the keyboard."""
