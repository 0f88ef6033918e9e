"""``python -m charlstm`` runs the command-line tool."""

from charlstm.cli import main

if __name__ == "__main__":
    main()
