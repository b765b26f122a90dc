/*
 * human: numbers for people — durations and sizes rounded to three
 * significant figures, for the operator's views (describe, usage, stats,
 * top). Machine formats (-o json/csv) print the raw numbers instead.
 */
#pragma once

#include "base/base.h"

/* "850ms", "12.3s", "4m05s", "2h07m", "3d04h"; "-" for a negative value. */
void human_secs(double secs, char out[32]);
/* "512B", "1.5Ki", "412Mi", "3.25Gi" (binary units). */
void human_bytes(double bytes, char out[32]);
/* "87%" of part/whole; "-" when whole is 0. */
void human_pct(double part, double whole, char out[32]);
