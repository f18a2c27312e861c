"""initial schema: patients, studies, series, instances

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('PatientID', sa.String(), nullable=False),
    sa.Column('IssuerOfPatientID', sa.String(), nullable=False),
    sa.Column('PatientName', sa.String(), nullable=True),
    sa.Column('PatientBirthDate', sa.String(), nullable=True),
    sa.Column('PatientBirthTime', sa.String(), nullable=True),
    sa.Column('PatientSex', sa.String(), nullable=True),
    sa.Column('EthnicGroup', sa.String(), nullable=True),
    sa.Column('PatientComments', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('PatientID', 'IssuerOfPatientID', name='uq_patient_identity')
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index('ix_patients_name', ['PatientName'], unique=False)

    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_pk', sa.Integer(), nullable=False),
    sa.Column('StudyInstanceUID', sa.String(), nullable=False),
    sa.Column('StudyDate', sa.String(), nullable=True),
    sa.Column('StudyTime', sa.String(), nullable=True),
    sa.Column('AccessionNumber', sa.String(), nullable=True),
    sa.Column('StudyID', sa.String(), nullable=True),
    sa.Column('ReferringPhysicianName', sa.String(), nullable=True),
    sa.Column('StudyDescription', sa.String(), nullable=True),
    sa.Column('PatientAge', sa.String(), nullable=True),
    sa.Column('PatientSize', sa.String(), nullable=True),
    sa.Column('PatientWeight', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient_pk'], ['patients.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('StudyInstanceUID')
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_studies_AccessionNumber'), ['AccessionNumber'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_StudyDate'), ['StudyDate'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_patient_pk'), ['patient_pk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_pk', sa.Integer(), nullable=False),
    sa.Column('SeriesInstanceUID', sa.String(), nullable=False),
    sa.Column('Modality', sa.String(), nullable=True),
    sa.Column('SeriesNumber', sa.String(), nullable=True),
    sa.Column('SeriesDescription', sa.String(), nullable=True),
    sa.Column('SeriesDate', sa.String(), nullable=True),
    sa.Column('SeriesTime', sa.String(), nullable=True),
    sa.Column('BodyPartExamined', sa.String(), nullable=True),
    sa.Column('ProtocolName', sa.String(), nullable=True),
    sa.Column('Laterality', sa.String(), nullable=True),
    sa.Column('PerformedProcedureStepStartDate', sa.String(), nullable=True),
    sa.Column('PerformedProcedureStepStartTime', sa.String(), nullable=True),
    sa.Column('Manufacturer', sa.String(), nullable=True),
    sa.Column('StationName', sa.String(), nullable=True),
    sa.Column('InstitutionName', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['study_pk'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('SeriesInstanceUID')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_Modality'), ['Modality'], unique=False)
        batch_op.create_index(batch_op.f('ix_series_study_pk'), ['study_pk'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_pk', sa.Integer(), nullable=False),
    sa.Column('SOPInstanceUID', sa.String(), nullable=False),
    sa.Column('SOPClassUID', sa.String(), nullable=False),
    sa.Column('InstanceNumber', sa.String(), nullable=True),
    sa.Column('ContentDate', sa.String(), nullable=True),
    sa.Column('ContentTime', sa.String(), nullable=True),
    sa.Column('AcquisitionDateTime', sa.String(), nullable=True),
    sa.Column('ImageType', sa.String(), nullable=True),
    sa.Column('SpecificCharacterSet', sa.String(), nullable=True),
    sa.Column('TransferSyntaxUID', sa.String(), nullable=False),
    sa.Column('NumberOfFrames', sa.Integer(), nullable=True),
    sa.Column('Rows', sa.Integer(), nullable=True),
    sa.Column('Columns', sa.Integer(), nullable=True),
    sa.Column('BitsAllocated', sa.Integer(), nullable=True),
    sa.Column('path', sa.String(), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('calling_aet', sa.String(), nullable=True),
    sa.Column('peer_address', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['series_pk'], ['series.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('SOPInstanceUID'),
    sa.UniqueConstraint('path')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_SOPClassUID'), ['SOPClassUID'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_instances_series_pk'), ['series_pk'], unique=False)




def downgrade() -> None:
    
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_pk'))
        batch_op.drop_index(batch_op.f('ix_instances_received_at'))
        batch_op.drop_index(batch_op.f('ix_instances_SOPClassUID'))

    op.drop_table('instances')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_pk'))
        batch_op.drop_index(batch_op.f('ix_series_Modality'))

    op.drop_table('series')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_patient_pk'))
        batch_op.drop_index(batch_op.f('ix_studies_StudyDate'))
        batch_op.drop_index(batch_op.f('ix_studies_AccessionNumber'))

    op.drop_table('studies')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index('ix_patients_name')

    op.drop_table('patients')

