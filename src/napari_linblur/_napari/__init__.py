"""Everything that touches napari and Qt lives here (widgets, reader, writer, sample data)."""
