"""lrtune's public contract as pydantic models; imports nothing else of lrtune."""
