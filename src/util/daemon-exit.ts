/**
 * The embedded lockd's exit status when its data directory is damaged (the log's
 * LogCorruptError): the CLI that started it then says how to repair it, deciding by this code,
 * not by the text of the log line (EX_DATAERR of sysexits.h).
 */
export const DAMAGED_DATA_EXIT = 65
